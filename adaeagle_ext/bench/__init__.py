"""Spec-Bench harness: ``adaeagle bench`` (prompts, runner, metrics, losslessness, peers, report)."""
