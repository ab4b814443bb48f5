"""clipseg-drywall: text-prompted drywall QA segmentation with CLIPSeg."""

__version__ = "0.1.0"
