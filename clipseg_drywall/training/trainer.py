"""`CLIPSegTrainer`: the Hugging Face Trainer with real encoder fine-tuning and segmentation eval.

It changes the model it is given, in place (see `CLIPSegTrainer`); `modeling.restore_stock_forward`
undoes that. What it adds to the Trainer:
- AdamW groups: decoder at `decoder_learning_rate`, CLIP encoders at `encoder_learning_rate`,
  `weight_decay` except on norms and biases (the Trainer's own `get_decay_parameter_names`).
  `freeze_encoder` (or an encoder rate of 0) turns encoder gradients off entirely.
- `lora_rank`: LoRA adapters (`adapters.apply_lora`) train in the CLIP towers at the encoder rate
  instead of their weights; checkpoints hold them unmerged, so a resumed run continues exactly.
- `compute_loss`: the model's own loss (`losses.segmentation_loss` through the gradient forward's
  `labels`), normalised by the Trainer's `num_items_in_batch`.
- Evaluation: per-task IoU / Dice at native resolution under the canonical prompts, through
  `scoring` (the package's one scoring path), gathered across processes; `mean_iou` (over tasks)
  is the default `metric_for_best_model`. Eval batches come from `eval_data_collator`.
- The training sampler is `sampling.DrawSampler` (seeded, optionally task-balanced).
- At the end the main process writes `training_curves.png` into `output_dir`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import EvalLoopOutput

from ..arguments import CLIPSegTrainingArguments
from ..losses import segmentation_loss
from ..modeling import DECODER_PREFIX, loss_options, segmentation_logits, set_encoder_trainable, use_gradient_forward
from ..scoring import ImageStatistics, batch_statistics, task_scores
from ..segmenters.base import threshold_of
from .adapters import apply_lora
from .collator import CLIPSegCollator
from .curves import plot_training_curves
from .sampling import DrawDataset, DrawSampler

CURVES_FILE = "training_curves.png"
# pixels + tokens (the plain path) or cached CLIP features (`feature_cache.CachedFeatureCollator`)
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "activations", "conditional_embeddings")


class CurvesCallback(TrainerCallback):
    """Writes `training_curves.png` from the log history when training ends (main process only)."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_training_curves(state.log_history, Path(args.output_dir) / CURVES_FILE)


def _is_decoder(name: str) -> bool:
    return name.removeprefix("module.").startswith(DECODER_PREFIX)


class CLIPSegTrainer(Trainer):
    """The Trainer for `CLIPSegForImageSegmentation` on drywall rows (image, mask, prompt, task).

    Building the trainer changes the model it is given, in place: the CLIP parameters the decoder
    never reaches get `requires_grad=False` (all of CLIP with `freeze_encoder`), and
    the instance's `forward` becomes the gradient path of `modeling.use_gradient_forward` (the
    stock forward runs CLIP under `no_grad`, so an encoder learning rate would train nothing).
    The class is untouched, so checkpoints stay plain `CLIPSegForImageSegmentation`; call
    `clipseg_drywall.modeling.restore_stock_forward(model)` to get the stock behaviour back.

    `eval_data_collator` builds the evaluation batches (default: canonical prompts, pixels, no
    augmentation); `data_collator` builds the training batches.
    """

    # `compute_loss` divides by `num_items_in_batch` (labelled pixels of the whole optimizer step)
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, args: CLIPSegTrainingArguments | None = None, train_dataset=None,
                 eval_data_collator=None, **kwargs):
        if not isinstance(args, CLIPSegTrainingArguments):
            raise TypeError("CLIPSegTrainer needs CLIPSegTrainingArguments (encoder/decoder rates, loss weights), "
                            f"got {type(args).__name__}")
        set_encoder_trainable(model, not (args.freeze_encoder or args.encoder_learning_rate == 0))
        if args.lora_rank:  # adapters in the CLIP towers instead of their weights (see `adapters`)
            apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout)
        use_gradient_forward(model, dice_weight=args.dice_weight, pos_weight=args.pos_weight)
        if train_dataset is not None and not isinstance(train_dataset, DrawDataset):
            train_dataset = DrawDataset(train_dataset)
        super().__init__(model=model, args=args, train_dataset=train_dataset, **kwargs)
        # the Trainer counts `labels != -100` for `num_items_in_batch` only when it believes the model takes it
        self.model_accepts_loss_kwargs = True
        if eval_data_collator is None and isinstance(self.data_collator, CLIPSegCollator):
            # canonical prompts, no augmentation, pixels (a cached-feature collator serves training only)
            eval_data_collator = CLIPSegCollator(self.data_collator.processor, train=False)
        self.eval_data_collator = eval_data_collator or self.data_collator
        self.add_callback(CurvesCallback())

    # ---- data: our sampler for training, the eval collator for evaluation ----

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return DrawSampler(dataset.tasks, seed=seed, balance_tasks=self.args.balance_tasks)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """In-order batches of `eval_data_collator`, sharded across processes by accelerate."""
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("CLIPSegTrainer: evaluation needs an eval_dataset")
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=self.eval_data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    # ---- optimisation ----

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Four AdamW groups: {decoder, encoder} x {decay, no decay on norms/biases}."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        rates = {"decoder": self.args.decoder_learning_rate, "encoder": self.args.encoder_learning_rate}
        groups = []
        for part, rate in rates.items():
            for decays in (True, False):
                params = [
                    p for n, p in opt_model.named_parameters()
                    if p.requires_grad and _is_decoder(n) == (part == "decoder") and (n in decay) == decays
                ]
                if params:
                    name = part if decays else f"{part}_no_decay"
                    groups.append({"params": params, "lr": rate, "name": name,
                                   "weight_decay": self.args.weight_decay if decays else 0.0})
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # the model's own loss (the gradient forward's `labels`): one loss for the Trainer and for direct calls
        outputs = model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs}, labels=inputs["labels"],
                        num_items_in_batch=num_items_in_batch)
        loss = outputs.loss
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # `num_items_in_batch` counts every process's pixels and DDP averages gradients over processes
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    # ---- evaluation ----

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:
        """Per-image statistics at native resolution, gathered across processes, summarised per task."""
        model = self.model
        model.eval()
        thresholds = (threshold_of(model.config),)
        self.callback_handler.eval_dataloader = dataloader
        tables = []
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.accelerator.autocast():
                logits = segmentation_logits(model, inputs["pixel_values"], inputs["input_ids"],
                                             inputs["attention_mask"], train_encoder=False)
                options = loss_options(model)
                losses = [segmentation_loss(logits[i : i + 1], inputs["labels"][i : i + 1], **options)
                          for i in range(len(logits))]
            table = batch_statistics(logits, inputs, thresholds).to_tensor()
            losses = torch.stack(losses).detach().double().cpu()[:, None]
            tables.append(self.accelerator.gather_for_metrics(torch.cat([table, losses], 1).to(self.args.device)))
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        table = torch.cat(tables).cpu() if tables else torch.zeros(0, 4 + 2 * len(thresholds) + 1, dtype=torch.float64)
        metrics = task_scores(ImageStatistics.from_tensor(table[:, :-1], thresholds), thresholds[0])
        if len(table):
            metrics["loss"] = float(table[:, -1].mean())
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(table))
