"""emseg: the shared module behind the EM membrane segmentation workflow's rule scripts."""

__version__ = "0.1.0"
