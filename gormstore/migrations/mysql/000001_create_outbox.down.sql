DROP TABLE IF EXISTS `txoutbox_outbox`;
