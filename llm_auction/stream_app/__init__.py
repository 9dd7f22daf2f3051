"""The Faust stream app: joins responses and clicks into impressions, retrains pCTR on a timer,
and triggers IRPO epochs. Sits above every service; none imports it."""
