"""Spec-Bench harness behind ``adaeagle bench``: prompts, runner, metrics, peers, report."""
