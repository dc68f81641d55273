-- the schema registry's storage, beside reshard's control database
CREATE DATABASE registry;
