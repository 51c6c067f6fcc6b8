"""The mini-world training recipes: how big every stage is (:mod:`~.recipe`), the loop they share (:mod:`~.loop`),
the tiny CLIP / BEATs towers and their tokenizer, the unCLIP decoder, the attribute classifier, and
:mod:`~.build`, which runs every stage into the shipped ``mini`` preset (``gen-align mini train``)."""
