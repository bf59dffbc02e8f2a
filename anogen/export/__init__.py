"""Writers of data set trees (MVTec AD, COCO, anomalib Folder, VisA) and the HTML report of a synth run.

No torch: exports and reports run wherever the images are.
"""

from anogen.export.common import ExportConfig, ExportPlan, export, find_synth_folders, read_synth_set
from anogen.export.writer import ExportResult

__all__ = ["ExportConfig", "ExportPlan", "ExportResult", "export", "find_synth_folders", "read_synth_set"]
