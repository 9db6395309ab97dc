"""The asset keys and the partitions several domains name, declared once."""

import dagster as dg

IMAGE = dg.AssetKey("image")  # images/assets.py: one partition per image
FLEET = dg.AssetKey("fleet")  # fleet/freshness.py: the running instances, what the fleet checks judge

IMAGE_PARTITIONS = "images"
image_partitions = dg.DynamicPartitionsDefinition(name=IMAGE_PARTITIONS)
