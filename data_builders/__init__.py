"""Builders that turn Roboflow exports into the drywall-QA dataset (image, prompt, mask)."""
