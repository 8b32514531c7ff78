"""Questions asked of the stored calls: usage totals, budgets, reports, the daily digest,
retention."""
