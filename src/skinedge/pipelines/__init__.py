"""Orchestration over several stages: quickstart (split, train, evaluate, explain), the GAN
ablation, quantize-and-verify, and the compression report. Stages stay in their own packages;
a pipeline calls them in order, resumes what finished, and reports through a ``Reporter``.
"""
