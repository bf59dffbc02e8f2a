"""Model code: backbone loading, the dual attention processor and adapter I/O.

Nothing is re-exported here: ``spec``, ``tokenizer``, ``small_configs`` and ``backbone`` import no torch at
module level (the CLI reads them for its help, dry runs and ``env``), and a package ``__init__`` importing the
torch modules would load torch for them too. Import from the modules: ``backbone`` (loading), ``spec``,
``tokenizer``, ``small_configs`` (the ``tiny`` configs), ``dual`` (:class:`~anogen.model.dual.DualAdapter`,
``encode_prompts``, ``dual_forward``) with its parts ``processor``, ``lora``, ``saim``, ``bcm``, ``text_lora``,
``fast_path`` and ``layers``, and ``adapter`` (the adapter files).
"""
