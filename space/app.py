"""Hugging Face Space entry point: the clipseg-drywall demo for the model named by $CLIPSEG_DRYWALL_MODEL.

Set the variable in the Space's settings (e.g. `org/clipseg-drywall`); Spaces run this file and
serve on the host and port they set through GRADIO_SERVER_NAME / GRADIO_SERVER_PORT.
"""

import sys
from pathlib import Path

try:
    from clipseg_drywall.app import demo_from_env, launch
except ImportError:  # run from a checkout without installing: the package sits one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clipseg_drywall.app import demo_from_env, launch

demo = demo_from_env()

if __name__ == "__main__":
    launch(demo)
