-- A database made by Retouch at commit 93062b4, before the bot took its tables along (the
-- core's set ran all six steps): one delivered task with a sent result, a user's settings
-- (originals on), and one update received but never handled. Dumped with iterdump.
BEGIN TRANSACTION;
CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL);
INSERT INTO "_migrations" VALUES('m001_tasks',1.79646318557545804977e+09);
INSERT INTO "_migrations" VALUES('m002_blobs',1.7964631855758328438e+09);
INSERT INTO "_migrations" VALUES('m003_telegram',1.79646318557930135726e+09);
INSERT INTO "_migrations" VALUES('m004_link_results_in_the_database',1.79646318558041501048e+09);
INSERT INTO "_migrations" VALUES('m005_telegram_inbox',1.79646318558450794221e+09);
INSERT INTO "_migrations" VALUES('m006_idempotency_keys',1.7964631855849769116e+09);
CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            mime_type TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
INSERT INTO "blobs" VALUES('a133be420f27ea2fa495a3cbefd5bb88cf5a5ed2a8fd414c064e39f467de2562','image/png',77,12,8,1.7964631856551377773e+09);
INSERT INTO "blobs" VALUES('f8ee700371318b52423517259e83a45d4bb91f426cab5c7e28e888a0a1906182','image/png',77,12,8,1796463185.66596);
CREATE TABLE task_blobs (
            task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            idx INTEGER NOT NULL,
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            PRIMARY KEY (task_id, role, idx)
        );
INSERT INTO "task_blobs" VALUES('0a86ec8095654bb6a1531436f8f73a30','input',0,'a133be420f27ea2fa495a3cbefd5bb88cf5a5ed2a8fd414c064e39f467de2562');
INSERT INTO "task_blobs" VALUES('0a86ec8095654bb6a1531436f8f73a30','result',0,'f8ee700371318b52423517259e83a45d4bb91f426cab5c7e28e888a0a1906182');
CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            function TEXT NOT NULL,
            vendor TEXT NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            n INTEGER NOT NULL DEFAULT 1,
            request TEXT NOT NULL,
            owner TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            submit_started_at REAL,
            vendor_task_id TEXT,
            next_poll_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            progress TEXT,
            results TEXT NOT NULL DEFAULT '[]',
            failures TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            notes TEXT NOT NULL DEFAULT '[]',
            billed_images INTEGER NOT NULL DEFAULT 0,
            cost REAL,
            currency TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        , idempotency_key TEXT);
INSERT INTO "tasks" VALUES(1,'0a86ec8095654bb6a1531436f8f73a30','succeeded','adjust','local','grayscale',1,'{"images": ["data:\u2026(100 chars)"], "function": "adjust", "prompt": "grayscale"}','tg:1001',1.79646318566360616679e+09,1.79646318567147159571e+09,1.7964631856648850441e+09,1.79646318567147159571e+09,1,NULL,0.0,NULL,NULL,NULL,0,NULL,'[{"index": 0, "uri": "retouch://tasks/0a86ec8095654bb6a1531436f8f73a30/0", "sha256": "f8ee700371318b52423517259e83a45d4bb91f426cab5c7e28e888a0a1906182", "mime_type": "image/png", "width": 12, "height": 8, "bytes": 77, "path": null, "vendor_url": null}]','[]',NULL,'[]',0,NULL,NULL,0,'telegram:1001:1');
CREATE TABLE tg_inbox (
            update_id INTEGER PRIMARY KEY,
            body TEXT NOT NULL,
            received_at REAL NOT NULL,
            done_at REAL
        );
INSERT INTO "tg_inbox" VALUES(900001,'{"update_id": 900001, "message": {"message_id": 50, "date": 1796463185, "chat": {"id": 1001, "type": "private", "first_name": "Ada"}, "from": {"id": 1001, "is_bot": false, "first_name": "Ada"}, "text": "/help", "entities": [{"type": "bot_command", "offset": 0, "length": 5}]}}',1.79646318568886876102e+09,NULL);
CREATE TABLE tg_messages (
            chat_id INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            file_id TEXT,
            PRIMARY KEY (chat_id, message_id)
        );
INSERT INTO "tg_messages" VALUES(1001,3,'0a86ec8095654bb6a1531436f8f73a30',0,'AgADold-file-id');
CREATE TABLE tg_tasks (
            task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
            chat_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            request_message_id INTEGER,
            status_message_id INTEGER,
            status_text TEXT,
            note TEXT,
            delivery TEXT NOT NULL DEFAULT 'pending'
                CHECK (delivery IN ('pending', 'sending', 'delivered', 'failed')),
            sent_items INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at REAL NOT NULL,
            claimed_at REAL,
            delivered_at REAL
        );
INSERT INTO "tg_tasks" VALUES('0a86ec8095654bb6a1531436f8f73a30',1001,1001,1,2,'✅ Done: /adjust grayscale with local',NULL,'delivered',1,1,0.0,NULL,1.79646318567191648485e+09,1.7964631856727252007e+09,1.79646318567585730552e+09);
CREATE TABLE tg_users (
            user_id INTEGER PRIMARY KEY,
            vendor TEXT,
            n INTEGER NOT NULL DEFAULT 1,
            seed INTEGER,
            originals INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        );
INSERT INTO "tg_users" VALUES(1001,NULL,1,NULL,1,1.79646318567738676064e+09);
CREATE INDEX tasks_claim ON tasks (vendor, status, lease_until);
CREATE INDEX tasks_vendor_task ON tasks (vendor, vendor_task_id);
CREATE INDEX tasks_owner ON tasks (owner, seq);
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX task_blobs_sha ON task_blobs (sha256);
CREATE INDEX tg_tasks_delivery ON tg_tasks (delivery, next_attempt_at);
CREATE INDEX tg_tasks_user ON tg_tasks (user_id, created_at);
CREATE INDEX tg_messages_task ON tg_messages (task_id);
CREATE TRIGGER tasks_link_results AFTER UPDATE OF results ON tasks
        WHEN json_array_length(NEW.results) > 0
        BEGIN
            INSERT OR IGNORE INTO task_blobs (task_id, role, idx, sha256)
            SELECT NEW.id, 'result', json_extract(value, '$.index'),
                   json_extract(value, '$.sha256')
            FROM json_each(NEW.results);
        END;
CREATE INDEX tg_inbox_open ON tg_inbox (done_at);
CREATE INDEX tg_tasks_message ON tg_tasks (chat_id, request_message_id);
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('tasks',1);
COMMIT;
