"""Tests of the state database: migrations, and how a database that goes away is reported."""
