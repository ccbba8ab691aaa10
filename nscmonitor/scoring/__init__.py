"""From the durable queue to stored predictions: claim -> stages (decode, is the content new,
QC, tiles, inference) -> complete, one module per concern (see ``scorer.py``). Independent of
intake: the images table is the only seam between them."""
