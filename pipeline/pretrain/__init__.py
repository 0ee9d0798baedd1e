"""Contrastive pretraining of a small CLIP on rendered faces captioned with their facial actions.

``dferclip pretrain`` (:func:`pipeline.pretrain.run.run_pretrain`) makes the weights shipped in
``pipeline/model/weights/``; docs/pretrain.md describes the data, the training and the results.
"""
