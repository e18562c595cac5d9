"""fusion: the dense head over the branches, and everything that uses the fused model.

Commands: ``agefuse-train-fusion`` (``agefuse.fusion.train``), ``agefuse-train-joint`` (``agefuse.fusion.joint``:
branches and head fine-tuned together), ``agefuse-evaluate``,
``agefuse-predict``, ``agefuse-export`` (also ``--format onnx``: ``agefuse.fusion.onnx``),
``agefuse-audit`` (``agefuse.fusion.audit``: suspect labels, near duplicates), ``agefuse-serve``
(``agefuse.fusion.serve``: a local HTTP service and page).
Reads: the regions cache and each branch's ``best.pt``. Writes: ``FUSED/fused.pt`` (branches,
head, the interval's temperature and the cache's crop settings in one file; docs/formats.md),
evaluation tables and plots, predictions as JSON and annotated photos.

Offers:
- ``load_fused(path)``: the fused model (the installed one without a path), ``DEFAULT_MODEL``;
- ``crop_settings(model, ...)``: how to find and crop faces the way the model learned them;
- inference (``agefuse.fusion.inference``, which the commands, the API, watch and the
  service share): ``predict_faces(model, image)``, every face of a BGR photo with its
  estimates (the records of agefuse-predict's JSON), and its parts: ``find_faces`` (the faces
  with the crops the model reads), ``estimate`` (crops to outputs), ``branch_pool``
  (branches side by side on several cores), ``draw_labelled_box``;
- ``oof_path(out, cache, region, mirrored, checkpoints)``: where agefuse-train-fusion
  ``--out-of-fold`` caches a region's training features from its fold branches;
- ``age_report(true, predicted)``, ``gender_report(true, p_female)``: the evaluation's
  figures (MAE, CS@5, MAE per decade; accuracy, precision, recall);
- ``read_features(path)``: a cached ``features-<split>-*.npz`` and the regions whose blocks it
  left zero (out of fold: their branches never ran over the training faces);
- ``train_fusion_parser()``, ``train_joint_parser()``: the agefuse-train-fusion and
  agefuse-train-joint parsers (recipes check their options on them).
"""
from .features import oof_path, read_features
from .inference import branch_pool, crop_settings, draw_labelled_box, estimate, find_faces, predict_faces
from .metrics import age_report, gender_report
from .model import DEFAULT_MODEL, BranchBlock, FusedModel, load_fused
from .onnx import OnnxModel


def train_fusion_parser():
    """The agefuse-train-fusion parser."""
    from .train import get_args_parser
    return get_args_parser()


def train_joint_parser():
    """The agefuse-train-joint parser."""
    from .joint import get_args_parser
    return get_args_parser()


__all__ = ["DEFAULT_MODEL", "BranchBlock", "FusedModel", "age_report", "gender_report", "OnnxModel", "branch_pool",
           "crop_settings", "draw_labelled_box", "estimate", "find_faces", "load_fused", "oof_path", "predict_faces",
           "read_features", "train_fusion_parser", "train_joint_parser"]
