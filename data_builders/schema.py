"""The dataset's schema, shared by the builder, the Hub card and the training code."""

import datasets

FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),  # mode L, values exactly {0, 255}, same size as `image`
        "prompt": datasets.Value("string"),
        "task": datasets.Value("string"),  # "crack" | "taping"
        "image_id": datasets.Value("string"),  # the export's file name
        "source_id": datasets.Value("string"),  # the photo the file was made from (name before ".rf.")
    }
)
