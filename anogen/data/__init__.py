"""Dataset readers: every supported tree becomes one :class:`~anogen.data.model.Category`."""
