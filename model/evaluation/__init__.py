"""Evaluation of click methods on GrabCut, Berkeley, DAVIS-345 or any image/mask folder
(``python -m model.evaluation.evaluate``), classical baselines and curve plots. The protocol itself is
:mod:`model.protocol`, shared with training's validation and the fit job.
"""
