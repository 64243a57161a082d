-- redrive_key_heads: mysql, default tables
SELECT partition_key FROM `txoutbox_inbox_failed` f WHERE consumer = ? AND partition_key <> '' AND status <> ? AND id = (SELECT min(id) FROM `txoutbox_inbox_failed` g WHERE g.consumer = f.consumer AND g.partition_key = f.partition_key) ORDER BY id LIMIT ?
