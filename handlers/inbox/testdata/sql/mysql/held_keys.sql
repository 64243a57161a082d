-- held_keys: mysql, default tables
SELECT partition_key, message_uuid FROM `txoutbox_inbox_failed` f WHERE consumer = ? AND partition_key IN ? AND id = (SELECT min(id) FROM `txoutbox_inbox_failed` g WHERE g.consumer = f.consumer AND g.partition_key = f.partition_key)
