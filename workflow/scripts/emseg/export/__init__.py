"""Export of a trained run as a BioImage Model Zoo package (spec 0.5), for Fiji, napari and others.

- `network`: the exported network (an emseg network followed by its softmax, membrane channel).
- `standalone`: that network's code as one file that needs only torch (the package's architecture).
- `weights`: the state dict and the TorchScript module, checked at sizes it was not traced at.
- `tensors`: valid sizes from the network's geometry, the test tensors, the cover image.
- `record`: what the package says about the run (settings, data, split, scores).
- `readme`: the package's documentation (training data, held-out scores, citations, license).
- `package`: the description, the zip, its validation and model test, offline.

Only `package` imports bioimageio.spec / bioimageio.core, the optional `export` extra.
"""
