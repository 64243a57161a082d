DROP TABLE IF EXISTS `txoutbox_inbox_failed`;
