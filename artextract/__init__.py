"""artextract: distributed batch processing for art analysis (painting classification and
portrait similarity) on Ray. Importing the package has no side effects."""

__version__ = "0.1.0"
