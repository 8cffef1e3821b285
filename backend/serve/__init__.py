"""The click path's request pipeline: parse ``/predict``, run the clicks on the inference worker, answer brush RLE."""
