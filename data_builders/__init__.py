"""Builders that turn Roboflow exports into the drywall-QA dataset (image, prompt, mask)."""

from clipseg_drywall.cli import require_extra

require_extra("data", ("datasets", "lxml"))  # the dataset build's own dependencies, named with the fix
