"""Every file anogen writes and reads back, typed: ``adapter.json`` (:class:`AdapterRecord`), ``run.json``
(:class:`RunRecord`), synth manifests (:mod:`anogen.records.manifest`) and a whole synth folder
(:class:`SynthFolder`, :func:`read_synth_folder`). No torch anywhere in this package.

Layers, lowest first (each module imports only those before it): ``adapter``, ``run``, ``manifest``, ``synth``.
"""

from anogen.records.adapter import (
    ADAPTER_JSON,
    AdapterRecord,
    BackboneRef,
    RecordedSplit,
    fit_fields,
    read_adapter_record,
    write_adapter_record,
)
from anogen.records.manifest import (
    MANIFEST,
    Tally,
    find_adapter_dirs,
    find_synth_dirs,
    read_all_rows,
    read_rows,
    result_rows,
    tally,
)
from anogen.records.run import RUN_JSON, AdapterLink, RunRecord, read_run_record, write_run_json
from anogen.records.synth import SynthFolder, SynthSample, find_synth_folders, read_synth_folder

__all__ = [
    "ADAPTER_JSON",
    "MANIFEST",
    "RUN_JSON",
    "AdapterLink",
    "AdapterRecord",
    "BackboneRef",
    "RecordedSplit",
    "RunRecord",
    "SynthFolder",
    "SynthSample",
    "Tally",
    "find_adapter_dirs",
    "find_synth_dirs",
    "find_synth_folders",
    "fit_fields",
    "read_adapter_record",
    "read_all_rows",
    "read_rows",
    "read_run_record",
    "read_synth_folder",
    "result_rows",
    "tally",
    "write_adapter_record",
    "write_run_json",
]
