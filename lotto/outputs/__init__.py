"""What results become: figures, tables, the report, status and energy summaries.
Import lotto.core and lotto.methods, never the jobs."""
