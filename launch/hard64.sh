# Sourced by the launch scripts of the hard-benchmark experiments (fit_probes.sh,
# calibration.sh, study_calibrated.sh), so that each names only what it varies.
# The hard shapes design at 64 px: 16 patches of 16 px per image, the tiny model's tower.
HARD64=(--config.data.difficulty=hard --config.model.vision.image_size=64
        --config.model.vision.patch_size=16)
# The calibrated question types: POPE's three existence probes and attribute_shape.
FOUR_TYPES=exist_random,exist_popular,exist_adversarial,attribute_shape
