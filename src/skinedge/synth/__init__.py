"""Synthetic lesions: class-conditional GANs (``synth.gan``), generative quality metrics
(``synth.metrics``), candidate selection (``synth.selection``) and the folders that turn
candidates into synthetic sets (``synth.candidates``), which ``skinedge.data.synthetic`` reads.
"""
