"""Fine-tune CLIPSeg for drywall QA segmentation (`python train.py ...` or `accelerate launch train.py ...`).

Arguments: ModelArguments, DataArguments and CLIPSegTrainingArguments in
`clipseg_drywall/arguments.py` (`python train.py --help`); the job is `clipseg_drywall/run_training.py`
(also installed as `clipseg-drywall-train`). Example, from a config on CPU:

    accelerate launch train.py --config_name configs/clipseg-small --tokenizer_name ../shared/clipseg-rd64-refined \
        --dataset_path data/drywall-qa --output_dir runs/small --max_steps 2000 --per_device_train_batch_size 8

Two CPU processes (DDP over gloo): `accelerate launch --multi_gpu --num_processes 2 train.py --use_cpu ...`
(accelerate 1.x's `--cpu --num_processes 2` starts one process unless mpirun is set up).
"""

import sys

from clipseg_drywall.training.run_training import main

if __name__ == "__main__":
    sys.exit(main())
