"""The Faust stream app: joins responses and clicks into impressions and retrains pCTR on a timer.
It does not trigger IRPO epochs yet (they run by hand: ``llm-auction irpo run-epoch``). Sits above
every service; none imports it."""
