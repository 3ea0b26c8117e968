-- Made once with the fleet store of main at 99b576a (sqlite-utils schema, no migrations): a data directory's
-- fleet.db as today's code writes it, dumped to SQL for tests/fleet/test_migrate.py.
BEGIN TRANSACTION;
CREATE TABLE "alerts" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT,
   "created_at" TEXT,
   "rule" TEXT,
   "state" TEXT,
   "record" TEXT
);
INSERT INTO "alerts" VALUES('30000000-0000-4000-8000-000000000001','cam-02','2026-11-01T10:04:30+00:00','override_rate','raised','{"id":"30000000-0000-4000-8000-000000000001","device":"cam-02","created_at":"2026-11-01T10:04:30+00:00","rule":"override_rate","state":"raised","value":0.4,"threshold":0.2,"message":""}');
CREATE TABLE "bundles" (
   "id" TEXT PRIMARY KEY,
   "name" TEXT,
   "version" TEXT,
   "task" TEXT,
   "sha256" TEXT,
   "size" INTEGER,
   "path" TEXT,
   "signer" TEXT,
   "labels" TEXT,
   "manifest" TEXT,
   "coreml" TEXT,
   "coreml_sha256" TEXT,
   "coreml_size" INTEGER,
   "pushed_at" TEXT
);
INSERT INTO "bundles" VALUES('pcb-aoi-v1.0','pcb-aoi','1.0','classify','abababababababababababababababababababababababababababababababab',123456,'pcb-aoi-v1.0.tar','signer','["ok", "defect"]','{}',NULL,NULL,NULL,'2026-11-01T10:00:00+00:00');
CREATE TABLE "desired" (
   "device" TEXT PRIMARY KEY,
   "revision" INTEGER,
   "release" TEXT,
   "candidate" TEXT,
   "rollout" TEXT,
   "payload" TEXT,
   "issued_at" TEXT
);
INSERT INTO "desired" VALUES('cam-01',1,'seal@1',NULL,'r1','{}','2026-11-01T10:02:00+00:00');
INSERT INTO "desired" VALUES('cam-02',1,'seal@1',NULL,'r1','{}','2026-11-01T10:02:00+00:00');
CREATE TABLE "desired_history" (
   "device" TEXT,
   "revision" INTEGER,
   "release" TEXT,
   "candidate" TEXT,
   "rollout" TEXT,
   "issued_at" TEXT,
   PRIMARY KEY ("device", "revision")
);
INSERT INTO "desired_history" VALUES('cam-01',1,'seal@1',NULL,'r1','2026-11-01T10:02:00+00:00');
INSERT INTO "desired_history" VALUES('cam-02',1,'seal@1',NULL,'r1','2026-11-01T10:02:00+00:00');
CREATE TABLE "devices" (
   "id" TEXT PRIMARY KEY,
   "groups" TEXT,
   "tags" TEXT,
   "first_seen" TEXT,
   "last_seen" TEXT,
   "status" TEXT,
   "active" TEXT,
   "candidate" TEXT,
   "activation" TEXT,
   "last_error" TEXT,
   "reported" TEXT
);
INSERT INTO "devices" VALUES('cam-01','["line-1"]','{}','2026-11-01T09:00:00+00:00','2026-11-01T10:05:00+00:00','online','seal@1',NULL,'{"state": "committed"}',NULL,'{}');
INSERT INTO "devices" VALUES('cam-02','["line-1"]','{}','2026-11-01T09:00:00+00:00','2026-11-01T10:05:00+00:00','online','seal@1',NULL,'{"state": "committed"}',NULL,'{}');
CREATE TABLE "events" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT,
   "created_at" TEXT,
   "kind" TEXT,
   "record" TEXT
);
INSERT INTO "events" VALUES('40000000-0000-4000-8000-000000000001','cam-01','2026-11-01T10:02:30+00:00','activation','{"id":"40000000-0000-4000-8000-000000000001","device":"cam-01","created_at":"2026-11-01T10:02:30+00:00","kind":"activation","detail":{"state":"commit"}}');
CREATE TABLE "malformed" (
   "topic" TEXT PRIMARY KEY,
   "count" INTEGER,
   "last_error" TEXT,
   "last_at" TEXT
);
INSERT INTO "malformed" VALUES('shadowline/dev/cam-01/predictions',1,'not json','2026-11-28T22:59:20.129+00:00');
CREATE TABLE "metrics" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT,
   "created_at" TEXT,
   "release" TEXT,
   "revision" INTEGER,
   "record" TEXT
);
INSERT INTO "metrics" VALUES('20000000-0000-4000-8000-000000000001','cam-02','2026-11-01T10:04:00+00:00','seal',1,'{"id":"20000000-0000-4000-8000-000000000001","device":"cam-02","created_at":"2026-11-01T10:04:00+00:00","release":"seal","revision":1,"window_s":60.0,"values":{"fps":9.5}}');
CREATE TABLE "predictions" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT,
   "created_at" TEXT,
   "release" TEXT,
   "revision" INTEGER,
   "mode" TEXT,
   "role" TEXT,
   "decision" TEXT,
   "top_label" TEXT,
   "top_score" REAL,
   "latency_ms" REAL,
   "record" TEXT
);
INSERT INTO "predictions" VALUES('00000000-0000-4000-8000-000000000000','cam-01','2026-11-01T10:03:00+00:00','seal',1,'shadow','active','flag','defect',0.0,5.0,'{"id":"00000000-0000-4000-8000-000000000000","device":"cam-01","created_at":"2026-11-01T10:03:00+00:00","source":"folder:img0.jpg","release":"seal","revision":1,"mode":"shadow","role":"active","models":{},"thresholds":{},"stages":[],"decision":"flag","flagged":[],"top_label":"defect","top_score":0.0,"latency_ms":{"total":5.0},"error":null,"disagrees_with":null,"image_kept":false}');
INSERT INTO "predictions" VALUES('00000000-0000-4000-8000-000000000001','cam-01','2026-11-01T10:03:01+00:00','seal',1,'shadow','active','pass','defect',0.1,6.0,'{"id":"00000000-0000-4000-8000-000000000001","device":"cam-01","created_at":"2026-11-01T10:03:01+00:00","source":"folder:img1.jpg","release":"seal","revision":1,"mode":"shadow","role":"active","models":{},"thresholds":{},"stages":[],"decision":"pass","flagged":[],"top_label":"defect","top_score":0.1,"latency_ms":{"total":6.0},"error":null,"disagrees_with":null,"image_kept":false}');
INSERT INTO "predictions" VALUES('00000000-0000-4000-8000-000000000002','cam-01','2026-11-01T10:03:02+00:00','seal',1,'shadow','active','pass','defect',0.2,7.0,'{"id":"00000000-0000-4000-8000-000000000002","device":"cam-01","created_at":"2026-11-01T10:03:02+00:00","source":"folder:img2.jpg","release":"seal","revision":1,"mode":"shadow","role":"active","models":{},"thresholds":{},"stages":[],"decision":"pass","flagged":[],"top_label":"defect","top_score":0.2,"latency_ms":{"total":7.0},"error":null,"disagrees_with":null,"image_kept":false}');
INSERT INTO "predictions" VALUES('00000000-0000-4000-8000-000000000003','cam-01','2026-11-01T10:03:03+00:00','seal',1,'shadow','active','flag','defect',3.00000000000000044408e-01,8.0,'{"id":"00000000-0000-4000-8000-000000000003","device":"cam-01","created_at":"2026-11-01T10:03:03+00:00","source":"folder:img3.jpg","release":"seal","revision":1,"mode":"shadow","role":"active","models":{},"thresholds":{},"stages":[],"decision":"flag","flagged":[],"top_label":"defect","top_score":0.30000000000000004,"latency_ms":{"total":8.0},"error":null,"disagrees_with":null,"image_kept":false}');
INSERT INTO "predictions" VALUES('00000000-0000-4000-8000-000000000004','cam-01','2026-11-01T10:03:04+00:00','seal',1,'shadow','active','pass','defect',0.4,9.0,'{"id":"00000000-0000-4000-8000-000000000004","device":"cam-01","created_at":"2026-11-01T10:03:04+00:00","source":"folder:img4.jpg","release":"seal","revision":1,"mode":"shadow","role":"active","models":{},"thresholds":{},"stages":[],"decision":"pass","flagged":[],"top_label":"defect","top_score":0.4,"latency_ms":{"total":9.0},"error":null,"disagrees_with":null,"image_kept":false}');
CREATE TABLE "releases" (
   "ref" TEXT PRIMARY KEY,
   "name" TEXT,
   "revision" INTEGER,
   "spec" TEXT,
   "parent" TEXT,
   "created_at" TEXT
);
INSERT INTO "releases" VALUES('seal@1','seal',1,'{"name": "seal", "revision": 1, "mode": "shadow", "stages": [{"role": "verify", "bundle": "pcb-aoi-v1.0"}]}',NULL,'2026-11-01T10:01:00+00:00');
CREATE TABLE "reviews" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT,
   "created_at" TEXT,
   "release" TEXT,
   "revision" INTEGER,
   "prediction_id" TEXT,
   "verdict" TEXT,
   "override" INTEGER,
   "record" TEXT
);
INSERT INTO "reviews" VALUES('10000000-0000-4000-8000-000000000001','cam-01','2026-11-01T10:04:00+00:00','seal',1,'00000000-0000-4000-8000-000000000000','false_positive',1,'{"id":"10000000-0000-4000-8000-000000000001","prediction_id":"00000000-0000-4000-8000-000000000000","device":"cam-01","created_at":"2026-11-01T10:04:00+00:00","inspector":"ann","verdict":"false_positive","defect_class":null,"override":true,"model_decision":"flag","release":"seal","revision":1,"models":{},"thresholds":{},"top_label":null,"top_score":null,"note":""}');
CREATE TABLE "rollout_targets" (
   "rollout" TEXT,
   "device" TEXT,
   "wave" INTEGER,
   "previous" TEXT,
   "previous_candidate" TEXT,
   "state" TEXT,
   "started_at" TEXT,
   PRIMARY KEY ("rollout", "device")
);
INSERT INTO "rollout_targets" VALUES('r1','cam-01',0,NULL,NULL,'active','1793527320.0');
INSERT INTO "rollout_targets" VALUES('r1','cam-02',0,NULL,NULL,'active','1793527320.0');
CREATE TABLE "rollouts" (
   "id" TEXT PRIMARY KEY,
   "release" TEXT,
   "grp" TEXT,
   "plan" TEXT,
   "state" TEXT,
   "wave" INTEGER,
   "reason" TEXT,
   "created_at" TEXT,
   "updated_at" TEXT
);
INSERT INTO "rollouts" VALUES('r1','seal@1','line-1','{"request": {"release": "seal@1", "group": "line-1", "waves": ["100%"], "gates": {}, "shadow_first": false}, "sizes": [2], "waves": [{"wave": 0, "started_iso": "2026-11-01T10:02:00+00:00", "done_at": 1793527400.0}], "release": "seal@1"}','completed',0,NULL,'2026-11-01T10:02:00+00:00','2026-11-01T10:04:00+00:00');
CREATE INDEX "idx_predictions_device_created_at"
    ON "predictions" ("device", "created_at");
CREATE INDEX "idx_predictions_release_revision"
    ON "predictions" ("release", "revision");
CREATE INDEX "idx_reviews_device_created_at"
    ON "reviews" ("device", "created_at");
CREATE INDEX "idx_reviews_release_revision"
    ON "reviews" ("release", "revision");
CREATE INDEX "idx_metrics_device_created_at"
    ON "metrics" ("device", "created_at");
CREATE INDEX "idx_metrics_release_revision"
    ON "metrics" ("release", "revision");
CREATE INDEX "idx_alerts_device_created_at"
    ON "alerts" ("device", "created_at");
CREATE INDEX "idx_events_device_created_at"
    ON "events" ("device", "created_at");
COMMIT;
