"""Model code: backbone loading, the dual attention processor and adapter I/O."""
