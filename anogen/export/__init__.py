"""Writers of data set trees (MVTec AD, COCO, anomalib Folder, VisA) and the HTML report of a synth run.

No torch: exports and reports run wherever the images are.

Layers, lowest first (each module imports only those below it): ``config``;
``items`` (the real category paired with its synth sets); ``planning`` and ``pixels``; the format planners
``mvtec``, ``coco``, ``folder``, ``visa``; ``notice``, ``probe``, ``placing``, ``writer``; ``run`` (the
:data:`~anogen.export.run.PLANNERS` table and :func:`export`). ``report`` and ``report_verify`` read synth folders
only.
"""

from anogen.export.config import FORMATS, LINK_MODES, ExportConfig, ExportFormat, LinkMode, parse_size
from anogen.export.items import AnomalyItem, CategoryItems, NormalItem, Provenance, collect_items, load_real_category
from anogen.export.planning import ExportPlan, GeneratedFile, PlannedFile
from anogen.export.run import PLANNERS, export
from anogen.export.writer import ExportResult

__all__ = [
    "FORMATS",
    "LINK_MODES",
    "PLANNERS",
    "AnomalyItem",
    "CategoryItems",
    "ExportConfig",
    "ExportFormat",
    "ExportPlan",
    "ExportResult",
    "GeneratedFile",
    "LinkMode",
    "NormalItem",
    "PlannedFile",
    "Provenance",
    "collect_items",
    "export",
    "load_real_category",
    "parse_size",
]
