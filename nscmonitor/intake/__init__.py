"""From the microscope's folders to the durable queue: watch, wait until a file is written,
drop junk, remember what is known, place each image (see ``intake.py``). Independent of
scoring: the images table is the only seam between them."""
