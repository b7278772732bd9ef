"""skinedge: skin-lesion classifiers from a GPU server to a phone."""

__version__ = "0.1.0"
