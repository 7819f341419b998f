# emseg: membrane segmentation of EM slices with deep convolutional networks.
#
#   download -> import -> split -> normalize -> mirror-pad -> augment (one shard per slice)
#   -> train -> predict (overlap-tile) -> score (V_rand, V_info) -> report
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/apply.smk"
include: "workflow/rules/segment.smk"


localrules:
    all,
    apply,
    apply_add_mask,
    download_isbi2012,
    split_slices,
    isbi_submission,
    mask,
    mask_ensemble,
    mask_held_out_ensemble,


rule all:
    default_target: True
    input:
        final_targets(),
