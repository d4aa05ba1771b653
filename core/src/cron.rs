//! Cron schedules: parsing (5/6-field, @macros) and next fire times in IANA timezones with a fixed DST policy.
