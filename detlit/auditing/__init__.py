"""After stage 8, auditing the labels: a model's out-of-fold detections against the json, ranked as
likely label mistakes (``ranking``), written as a CSV to edit (``table``) and a gallery of crops
(``gallery``), the edited CSV applied to a corrected copy of the json (``corrections``), and the
job of ``python -m detlit.audit`` (``audit``)."""
