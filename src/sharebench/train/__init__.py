"""What each task does with a model (`tasks` hands a run to its task): pretraining (`pretrain`), GLUE fine-tuning
(`finetune`), zero-shot STS-B (`zero_shot`), held-out scoring (`evaluate`) and a checkpoint's conversion
(`conversion`), with the optimizer and its schedule (`optim`)."""
