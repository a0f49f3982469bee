"""Runnable scenarios of the classic messaging patterns, each against a running broker:

    python -m logstore.examples.NAME --bootstrap-server HOST:PORT

NAME: checkout_emails, order_fanout, work_queue, pdf_request_reply, video_pipeline,
payment_no_double_charge, delivery_guarantees. Each creates its own topics (suffixed with a
run id, so runs never see each other's records), prints what happened, stops within
--timeout seconds and exits 0 when the scenario behaved as the pattern promises.
"""
