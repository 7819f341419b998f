"""emseg: the shared module behind the EM membrane segmentation workflow's rule scripts."""

__version__ = "0.2.0"
