"""The radiology information domain: patients, orders, procedures, steps, reports."""
