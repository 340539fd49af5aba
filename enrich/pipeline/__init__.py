"""Background processing: the job runner claims stored messages and turns them into
pending enrichment items (``runner``), ``process`` holds what one message becomes, and
``outbox`` sends the replies."""
