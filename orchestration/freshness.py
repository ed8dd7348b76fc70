"""How fresh every asset should be: the daily schedule (02:00 UTC) syncs every tenant, so data
older than a day means a missed or failed sync. The UI shows it as a warning after 26 hours (a
slow night) and as a failure after 30."""

from datetime import timedelta

import dagster as dg

DAILY_SYNC_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=30),
                                                      warn_window=timedelta(hours=26))
