"""Pictures, in one place: boxes drawn on images and montages (``drawing``), metric pictures
(``plots``), training curves (``curves``) and what validation shows in TensorBoard and the log
(``views``). It sits between ``model/`` and ``evaluation/``: it draws what the evaluation
matched and measured, and the model, inference, training and the report all draw through it."""
