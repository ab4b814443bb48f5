"""Training: `CLIPSegTrainer` (trainer), the job behind train.py (run_training), batches (collator),
the task-balanced order (sampling), cached CLIP features for decoder-only training (feature_cache),
LoRA adapters (adapters) and training_curves.png (curves).
"""
