"""Evaluation of N-way K-shot episodes: orchestration (:mod:`.evaluate`), the batched evaluator
(:mod:`.batched`), accuracy statistics (:mod:`.metrics`) and the benchmark grid (:mod:`.bench`)."""
