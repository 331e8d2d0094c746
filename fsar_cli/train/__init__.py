"""Episodic meta-training: one loop (:mod:`.loop`) shared by the frozen mode (cached features,
:mod:`.frozen`) and the fine-tuning mode (frames through the CLIP tower, :mod:`.finetune`)."""
